"""distsleep."""
