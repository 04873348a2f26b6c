"""vantrack gateway: the CPython service that receives the vans' CoAP/CBOR reports.

Only the package exists so far; the CoAP server, store and relays arrive with their issues.
"""
