"""The DNS proxy: mesh hostnames answered with their VIPs, the rest forwarded."""
