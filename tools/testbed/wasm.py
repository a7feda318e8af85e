"""Hand-made Proxy-Wasm modules (failure and cost baselines), assembled byte by byte."""


def wasm_module(types, functions, exports, bodies):
    """A minimal Wasm binary: type, function, memory (1 page), export and code sections."""
    def leb(n):
        out = bytearray()
        while True:
            byte, n = n & 0x7F, n >> 7
            out.append(byte | (0x80 if n else 0))
            if not n:
                return bytes(out)

    def vector(items):
        return leb(len(items)) + b"".join(items)

    def section(section_id, payload):
        return bytes([section_id]) + leb(len(payload)) + payload

    i32 = b"\x7f"
    type_entries = [b"\x60" + vector([i32] * params) + vector([i32] * results) for params, results in types]
    export_entries = [leb(len(name)) + name.encode() + bytes([kind]) + leb(index) for name, kind, index in exports]
    code_entries = [leb(len(body) + 1) + b"\x00" + body for body in bodies]
    return (b"\0asm\x01\0\0\0" + section(1, vector(type_entries)) + section(3, vector([leb(t) for t in functions]))
            + section(5, b"\x01\x00\x01") + section(7, vector(export_entries)) + section(10, vector(code_entries)))


def proxy_wasm_module(on_request_headers):
    """A Proxy-Wasm filter that starts and configures fine and runs on_request_headers (a function
    body) on every request."""
    nop, const_1, const_1024 = b"\x0b", b"\x41\x01\x0b", b"\x41\x80\x08\x0b"
    types = [(0, 0), (1, 1), (2, 0), (2, 1), (3, 1), (1, 0)]
    functions = [0, 1, 2, 3, 3, 4, 1, 5]
    names = ["proxy_abi_version_0_2_1", "proxy_on_memory_allocate", "proxy_on_context_create", "proxy_on_vm_start",
             "proxy_on_configure", "proxy_on_request_headers", "proxy_on_done", "proxy_on_delete"]
    bodies = [nop, const_1024, nop, const_1, const_1, on_request_headers, const_1, nop]
    exports = [(name, 0, index) for index, name in enumerate(names)] + [("memory", 2, 0)]
    return wasm_module(types, functions, exports, bodies)


def noop_module():
    """A Proxy-Wasm filter that lets every request through untouched (returns Continue): what running
    any Wasm filter costs in Envoy before it does any work."""
    return proxy_wasm_module(b"\x41\x00\x0b")


def trapping_module():
    """A Proxy-Wasm filter that starts and configures fine, then traps (`unreachable`) on every request:
    what a panic inside a filter amounts to at run time."""
    return proxy_wasm_module(b"\x00\x0b")  # unreachable
