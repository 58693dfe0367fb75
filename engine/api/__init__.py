"""HTTP routers, one per resource of the Ta-da contract."""
