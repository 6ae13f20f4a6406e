"""The edges' sans-I/O core: client sessions, their subscriptions and queues, the hub's index, the
client wire format and the router link's state. No sockets, no clock, no event loop."""
