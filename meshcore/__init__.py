"""What mesh-agent and mesh-registrar share, and nothing else.

A small core with a public API: configuration reading (``meshcore.config``),
``Secret``, durable atomic writes, the injected clock and random source, and
the exit codes. Neither program imports the other; both import this.
"""
