#ifndef WEIR_CAPABILITIES_SHIM_H
#define WEIR_CAPABILITIES_SHIM_H
#include <sys/capability.h>
#endif
