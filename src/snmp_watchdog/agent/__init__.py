"""The optional read-only SNMP agent: the MIB's scalars and service table for managers to poll."""
