"""Jobs: what one command does, end to end, composed from the core, the algorithms and the runtime.

A CLI module parses options and calls one job; a job returns a summary dict.
"""
