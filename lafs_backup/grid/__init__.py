"""The grid: the web API client (the only treq user), the health its check results tell, and the embedded local grid."""
