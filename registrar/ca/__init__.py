"""The mesh CA: loading its material, checking CSRs, signing workload certificates."""
