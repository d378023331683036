"""The VM's private key and the CSR that carries only its public half."""
