"""
Finding codecs: each protocol is a Twisted plugin providing L{ICodecPlugin},
so a third-party package adds C{--protocol NAME} by shipping a module in its
own C{twisted/plugins/} directory::

    from poolproxy.plugins import CodecPlugin
    lineproto = CodecPlugin("line", "mypackage.codec", "Newline-delimited requests.")

Like twistd's L{ServiceMaker}, a L{CodecPlugin} is lazy: the codec's module is
imported only when that protocol is chosen, so listing protocols stays cheap.
The module must have a module-level C{codec} providing L{ICodec}.
"""

from __future__ import annotations

from typing import Dict

from twisted.plugin import IPlugin
from twisted.python.reflect import namedAny
from zope.interface import Attribute, Interface, implementer

from poolproxy.codec import ICodec


class ICodecPlugin(Interface):
    name = Attribute("The --protocol name.")
    description = Attribute("One line for --help and the docs.")

    def load() -> ICodec:
        """Import and return the codec."""


@implementer(IPlugin, ICodecPlugin)
class CodecPlugin:
    """
    A lazily loaded codec: C{module} is imported by L{load}, and its
    C{codec} attribute is the L{ICodec}.
    """

    def __init__(self, name: str, module: str, description: str) -> None:
        self.name = name
        self.module = module
        self.description = description

    def load(self) -> ICodec:
        codec = namedAny(self.module + ".codec")
        if not ICodec.providedBy(codec):
            raise TypeError(f"{self.module}.codec does not provide ICodec")
        return codec

    def __repr__(self) -> str:
        return f"CodecPlugin({self.name!r}, {self.module!r})"


def codec_plugins() -> Dict[str, ICodecPlugin]:
    """
    Every codec plugin installed, by name.  The first found wins a name.
    """
    from twisted.plugin import getPlugins

    import twisted.plugins

    found: Dict[str, ICodecPlugin] = {}
    for plugin in getPlugins(ICodecPlugin, twisted.plugins):
        found.setdefault(plugin.name, plugin)
    return found


def load_codec(name: str) -> ICodec:
    """
    The codec called C{name}.

    @raise KeyError: if no plugin has that name.
    """
    return codec_plugins()[name].load()
