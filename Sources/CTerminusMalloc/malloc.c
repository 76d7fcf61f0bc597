#include "CTerminusMalloc.h"

// Defines __GLIBC__ on glibc.
#include <stdlib.h>

#if defined(__GLIBC__)
#include <malloc.h>

long long terminus_heap_free_bytes(void) {
    struct mallinfo2 info = mallinfo2();
    return (long long)info.fordblks;
}

int terminus_heap_trim(void) {
    return malloc_trim(0);
}
#else
long long terminus_heap_free_bytes(void) {
    return -1;
}

int terminus_heap_trim(void) {
    return -1;
}
#endif
