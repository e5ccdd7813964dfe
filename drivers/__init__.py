"""Hardware adapters behind small interfaces, each with a simulated twin.

Drivers never import the daemon: they turn hardware into typed values and accept typed
commands. Hardware libraries are imported lazily inside concrete backends.
"""
