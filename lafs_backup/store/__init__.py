"""The grid-side format and the store: entries, snapshot edges, encodings, packs, the planner's decisions, and the one
way objects reach the grid."""
