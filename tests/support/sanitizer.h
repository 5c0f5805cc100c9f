// QTRAIN_ASAN is 1 in a build instrumented with AddressSanitizer (QTRAIN_SANITIZE / QTRAIN_FUZZ).
// ASan replaces malloc (glibc's mallinfo2 sees nothing) and its shadow memory and quarantine
// inflate a process's resident set, so memory measurements use its allocator statistics or skip.
#pragma once

#if defined(__SANITIZE_ADDRESS__)
#define QTRAIN_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define QTRAIN_ASAN 1
#endif
#endif
#ifndef QTRAIN_ASAN
#define QTRAIN_ASAN 0
#endif

#if QTRAIN_ASAN
#include <sanitizer/allocator_interface.h>
#endif
