"""haproxy.cfg and pound.cfg to lbproxy's YAML, with a report of what was not carried.

Pure: the readers parse text (and read the files they are asked to, ``Include`` too), the
translators build the YAML shape of docs/configuration.md as plain dicts, ``yaml_writer`` writes
it with a comment naming each virtual server's and rule's source line. See docs/migration.md.
"""
