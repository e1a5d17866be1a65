"""The edges: sockets with fds, the event loop, the link's reader and writer,
transports, pool memory and scheduling.  Imports the core, never the halves."""
