"""
C{--workers N}: the supervisor process, its web endpoint, and a worker's side
(adopting the supervisor's sockets).
"""
