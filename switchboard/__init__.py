"""The ``switchboard`` command, which starts the router, the edges and the tools of both."""
