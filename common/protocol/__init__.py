"""What server and sites speak, and nothing else: both import this package, never each other.

- ``records``: the names of the records in a message, the site's status codes, the metric keys
  of a reply, and the arrays' conversion to Flower's ArrayRecord;
- ``request``: the server's training request as a site parses and checks it.
"""
