"""Minimal reader for an R lazy-load DB (Rdata.rdx/.rdb, XDR serialization v2/v3)
sufficient to pull character vectors out of Debian's r-cran-janeaustenr."""
import struct, zlib, gzip, sys, os

class R:
    def __init__(s, b): s.b, s.p, s.refs = b, 0, []
    def i(s):
        v = struct.unpack('>i', s.b[s.p:s.p+4])[0]; s.p += 4; return v
    def raw(s, n):
        v = s.b[s.p:s.p+n]; s.p += n; return v
    def header(s):
        assert s.raw(2) == b'X\n'
        ver = s.i(); s.i(); s.i()
        if ver == 3:
            n = s.i(); s.raw(n)  # native encoding
    def item(s):
        flags = s.i(); t = flags & 0xff
        has_attr, has_tag = bool(flags & (1 << 9)), bool(flags & (1 << 10))
        if t == 254: return None            # NILVALUE
        if t in (242, 253, 251, 252): return None  # empty env, globalenv, missingarg, baseenv
        if t == 255: return s.refs[(flags >> 8) - 1]  # REFSXP
        if t == 1:                           # SYMSXP
            v = s.item(); s.refs.append(v); return v
        if t == 9:                           # CHARSXP
            n = s.i(); return None if n == -1 else s.raw(n).decode('utf-8', 'replace')
        if t in (2, 6, 17, 5):               # LISTSXP / LANGSXP / DOTSXP / PROMSXP pairlist
            attr = s.item() if has_attr else None
            tag = s.item() if has_tag else None
            car = s.item(); cdr = s.item()
            return ('pair', tag, car, cdr, attr)
        if t in (16, 19, 20):                # STRSXP / VECSXP / EXPRSXP
            n = s.i(); v = [s.item() for _ in range(n)]
        elif t in (13, 10):                  # INTSXP / LGLSXP
            n = s.i(); v = list(struct.unpack('>%di' % n, s.raw(4 * n)))
        elif t == 14:                        # REALSXP
            n = s.i(); v = list(struct.unpack('>%dd' % n, s.raw(8 * n)))
        else:
            raise ValueError('unsupported SEXP type %d' % t)
        attr = s.item() if has_attr else None
        return ('vec', t, v, attr)

def unser(blob):
    data = gzip.decompress(blob) if blob[:2] == b'\x1f\x8b' else zlib.decompress(blob[4:])
    r = R(data); r.header(); return r.item()

def attr_names(obj):
    pl = obj[3]
    while pl is not None:
        if pl[1] == 'names': return pl[2][2]
        pl = pl[3]

base = sys.argv[1]  # .../data/Rdata
idx = unser(open(base + '.rdx', 'rb').read())
rdb = open(base + '.rdb', 'rb').read()
variables = idx[2][0]
for nm, ref in zip(attr_names(variables), variables[2]):
    off, ln = ref[2]
    obj = unser(rdb[off:off + ln])
    if obj[0] == 'vec' and obj[1] == 16:
        out = os.path.join(sys.argv[2], nm + '.txt')
        open(out, 'w').write('\n'.join(x if x is not None else '' for x in obj[2]) + '\n')
        print(nm, len(obj[2]), 'lines ->', out)
    else:
        print(nm, 'type', obj[0], obj[1] if obj[0] == 'vec' else '')
