"""Release notifications: the receivers' queues and their HTTP delivery (delivery.py).

What a notice says and how each format spells it is pure, in proxy/core/notices.py.
"""
