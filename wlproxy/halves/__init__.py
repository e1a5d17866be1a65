"""The two halves and what they share: a link session, its channels, and the
trace proxy.  They join the core's decisions to the io edges."""
