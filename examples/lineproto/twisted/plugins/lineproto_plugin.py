from poolproxy.plugins import CodecPlugin

line = CodecPlugin("line", "lineproto", "Newline-delimited requests and responses (an example).")
