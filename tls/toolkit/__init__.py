"""The certificate toolkit: ``lbproxy csr``, ``convert-pfx``, ``convert-cer``, ``install-cert``,
``selfsigned`` and ``show-cert``. The running proxy never imports it; it uses ``tls`` only.
"""
