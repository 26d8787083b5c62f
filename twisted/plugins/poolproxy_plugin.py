# One lazy line: twistd imports every plugin module to list commands, so nothing
# heavy is imported here; the work lives in poolproxy.tap.
from twisted.application.service import ServiceMaker

poolproxy = ServiceMaker(
    "poolproxy",
    "poolproxy.tap",
    "A protocol-aware, connection-pooling reverse proxy.",
    "poolproxy",
)
