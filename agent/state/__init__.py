"""The agent's persistent, versioned state (state.json)."""
