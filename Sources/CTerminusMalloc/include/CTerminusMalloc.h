#ifndef C_TERMINUS_MALLOC_H
#define C_TERMINUS_MALLOC_H

#include <stddef.h>

/// glibc's malloc statistics and trim, which Swift's Glibc module does not import (<malloc.h>).
/// Both return -1 / do nothing where the C library is not glibc.

/// Free bytes in the malloc heaps (`mallinfo2().fordblks`), resident or not; -1 without glibc.
long long terminus_heap_free_bytes(void);

/// `malloc_trim(0)`: returns the free pages inside every heap to the kernel. 1 if memory was
/// released, 0 if not, -1 without glibc.
int terminus_heap_trim(void);

#endif
