"""The sans-IO core: the protocol model from the XML, the validating codec,
link framing, the surface and damage model, and the policy's decisions.
Nothing here owns a socket; it imports nothing from the rest of wlproxy."""
