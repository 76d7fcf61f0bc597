#ifndef C_TERMINUS_ZLIB_H
#define C_TERMINUS_ZLIB_H
#include <zlib.h>

/// Swift cannot call the inflateInit2/deflateInit2 macros; these wrap them.
static inline int cterminus_inflateInit2(z_streamp strm, int windowBits) {
    return inflateInit2(strm, windowBits);
}

static inline int cterminus_deflateInit2(z_streamp strm, int level, int windowBits, int memLevel) {
    return deflateInit2(strm, level, Z_DEFLATED, windowBits, memLevel, Z_DEFAULT_STRATEGY);
}
#endif
