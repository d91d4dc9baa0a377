"""maskfm."""
