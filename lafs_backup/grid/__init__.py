"""The grid: the web API client (the only treq user) and the embedded local grid."""
