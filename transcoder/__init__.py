"""Domain code of the chunked transcoder: plain functions and typed values, no Prefect.

`flows/` and `tasks/` wrap these in Prefect flows and tasks; everything here can be
called and tested without a server.
"""
