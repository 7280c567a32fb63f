"""sssrd: the streaming server-side rendering daemon.

Holds a viewer's HTTP connection, invokes a render Lambda asynchronously with a callback URL
that points back at this process, and streams the Lambda's callback body into the viewer's
response as it arrives.
"""

__version__ = "0.1.0"
