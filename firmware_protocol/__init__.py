"""The wire protocol between the gateway and door I/O boards (codec, framer, session).

Pure library: imports nothing from the rest of the project.
"""
