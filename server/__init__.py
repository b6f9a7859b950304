"""learnloop's two faces over the library: the MCP server and the CLI."""
