"""The mesh model: WorkloadGroups, WorkloadEntries and Services (Istio's ServiceEntry)."""
