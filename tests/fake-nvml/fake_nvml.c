/*
 * A fake libnvidia-ml.so.1 for tests: the NVML functions pool-managerd calls (through
 * nvml-wrapper), answering from a scenario file that the test rewrites while the daemon runs.
 * It lets CI run the daemon's real NVML code path (src/gpu/nvml.rs) without a GPU; a machine
 * with a GPU remains the final word.
 *
 * The scenario file is named by the environment variable POOL_MANAGERD_FAKE_NVML, or, where
 * it is not set, is the file fake-nvml.scenario next to the library itself (so that copies of
 * the library loaded by path into one process, as the feature suite's daemons do through
 * [gpu] nvml_library, each read their own). It is read again at every call (so a rewrite is
 * seen at the next reading). One item per line, fields separated by spaces, sizes in bytes:
 *
 *   gpu <index> <uuid> <name-without-spaces> <cc-major> <cc-minor> <total> <free>
 *   proc <gpu-index> <pid> <used-bytes>            a compute process on that GPU
 *   mig <gpu-index> <uuid> <name> <total> <free>   a MIG device (turns MIG mode on for the GPU)
 *   migproc <gpu-index> <mig-slot> <pid> <used>    a compute process on a MIG device
 *   xid <gpu-index> <xid>                          an Xid event, delivered once, in file order
 *                                                  (the lines of a GPU's events are counted:
 *                                                  append to deliver another)
 *   ecc <gpu-index>                                a double-bit ECC event, delivered once
 *   lost <gpu-index>                               the GPU's event wait answers "GPU is lost"
 *                                                  (NVML_ERROR_GPU_IS_LOST) once, in file order
 *   error <function> <nvml-return-code>            that function fails with that code
 *
 * Lines starting with '#' and unknown lines are ignored. Device handles are opaque small
 * integers: GPU i is (i + 1), MIG slot m of GPU i is ((i + 1) << 8 | (m + 1)).
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef int nvmlReturn_t;
typedef void *nvmlDevice_t;
typedef void *nvmlEventSet_t;

enum {
    NVML_SUCCESS = 0,
    NVML_ERROR_UNINITIALIZED = 1,
    NVML_ERROR_INVALID_ARGUMENT = 2,
    NVML_ERROR_NOT_SUPPORTED = 3,
    NVML_ERROR_NOT_FOUND = 6,
    NVML_ERROR_INSUFFICIENT_SIZE = 7,
    NVML_ERROR_TIMEOUT = 10,
    NVML_ERROR_GPU_IS_LOST = 15,
};

#define EVENT_DOUBLE_BIT_ECC 0x2ULL
#define EVENT_XID_CRITICAL 0x8ULL
/* Not an NVML event type: a queued "GPU is lost" answer of the event wait. */
#define QUEUED_GPU_LOST (1ULL << 63)
#define MAX_GPUS 16
#define MAX_MIGS 7
#define MAX_PROCS 64
#define MAX_EVENTS 256

typedef struct {
    unsigned int pid;
    unsigned long long used;
    unsigned int gpu_instance;
    unsigned int compute_instance;
} process_info_t;

typedef struct {
    unsigned int version;
    unsigned long long total, reserved, free, used;
} memory_v2_t;

typedef struct {
    nvmlDevice_t device;
    unsigned long long type;
    unsigned long long data;
    unsigned int gpu_instance;
    unsigned int compute_instance;
} event_data_t;

typedef struct {
    int present;
    char uuid[96];
    char name[96];
    unsigned long long total, free;
    int nprocs;
    process_info_t procs[MAX_PROCS];
} device_t;

typedef struct {
    device_t gpu;
    int cc_major, cc_minor;
    int nmigs;
    device_t migs[MAX_MIGS];
    int nevents;
    unsigned long long event_type[MAX_EVENTS];
    unsigned long long event_data[MAX_EVENTS];
} gpu_t;

static gpu_t gpus[MAX_GPUS];
static int ngpus;
static char errors[32][2][96];
static int nerrors;
/* Events delivered so far, per GPU (the file lists them all; each is delivered once). */
static int delivered[MAX_GPUS];

/* The scenario file: $POOL_MANAGERD_FAKE_NVML, else fake-nvml.scenario next to this library. */
static const char *scenario_path(void) {
    static char beside[4096];
    const char *path = getenv("POOL_MANAGERD_FAKE_NVML");
    if (path && *path) return path;
    Dl_info info;
    if (!dladdr((void *)&scenario_path, &info) || !info.dli_fname) return NULL;
    snprintf(beside, sizeof beside, "%s", info.dli_fname);
    char *slash = strrchr(beside, '/');
    size_t dir = slash ? (size_t)(slash - beside) + 1 : 0;
    snprintf(beside + dir, sizeof beside - dir, "fake-nvml.scenario");
    return beside;
}

static void load(void) {
    memset(gpus, 0, sizeof gpus);
    ngpus = 0;
    nerrors = 0;
    const char *path = scenario_path();
    FILE *f = path ? fopen(path, "r") : NULL;
    if (!f) return;
    char line[512];
    while (fgets(line, sizeof line, f)) {
        char kind[16] = {0}, a[96] = {0}, b[96] = {0};
        unsigned int i = 0, m = 0, pid = 0;
        int major = 0, minor = 0;
        unsigned long long x = 0, y = 0;
        if (sscanf(line, "%15s", kind) != 1 || kind[0] == '#') continue;
        if (!strcmp(kind, "gpu") &&
            sscanf(line, "gpu %u %95s %95s %d %d %llu %llu", &i, a, b, &major, &minor, &x, &y) == 7 &&
            i < MAX_GPUS) {
            gpus[i].gpu.present = 1;
            snprintf(gpus[i].gpu.uuid, sizeof gpus[i].gpu.uuid, "%s", a);
            snprintf(gpus[i].gpu.name, sizeof gpus[i].gpu.name, "%s", b);
            gpus[i].cc_major = major;
            gpus[i].cc_minor = minor;
            gpus[i].gpu.total = x;
            gpus[i].gpu.free = y;
            if ((int)i + 1 > ngpus) ngpus = (int)i + 1;
        } else if (!strcmp(kind, "proc") && sscanf(line, "proc %u %u %llu", &i, &pid, &x) == 3 &&
                   i < MAX_GPUS && gpus[i].gpu.nprocs < MAX_PROCS) {
            process_info_t *p = &gpus[i].gpu.procs[gpus[i].gpu.nprocs++];
            p->pid = pid;
            p->used = x;
        } else if (!strcmp(kind, "mig") &&
                   sscanf(line, "mig %u %95s %95s %llu %llu", &i, a, b, &x, &y) == 5 &&
                   i < MAX_GPUS && gpus[i].nmigs < MAX_MIGS) {
            device_t *d = &gpus[i].migs[gpus[i].nmigs++];
            d->present = 1;
            snprintf(d->uuid, sizeof d->uuid, "%s", a);
            snprintf(d->name, sizeof d->name, "%s", b);
            d->total = x;
            d->free = y;
        } else if (!strcmp(kind, "migproc") &&
                   sscanf(line, "migproc %u %u %u %llu", &i, &m, &pid, &x) == 4 && i < MAX_GPUS &&
                   m < MAX_MIGS && gpus[i].migs[m].nprocs < MAX_PROCS) {
            process_info_t *p = &gpus[i].migs[m].procs[gpus[i].migs[m].nprocs++];
            p->pid = pid;
            p->used = x;
        } else if (!strcmp(kind, "xid") && sscanf(line, "xid %u %llu", &i, &x) == 2 &&
                   i < MAX_GPUS && gpus[i].nevents < MAX_EVENTS) {
            gpus[i].event_type[gpus[i].nevents] = EVENT_XID_CRITICAL;
            gpus[i].event_data[gpus[i].nevents++] = x;
        } else if (!strcmp(kind, "ecc") && sscanf(line, "ecc %u", &i) == 1 && i < MAX_GPUS &&
                   gpus[i].nevents < MAX_EVENTS) {
            gpus[i].event_type[gpus[i].nevents] = EVENT_DOUBLE_BIT_ECC;
            gpus[i].event_data[gpus[i].nevents++] = 0;
        } else if (!strcmp(kind, "lost") && sscanf(line, "lost %u", &i) == 1 && i < MAX_GPUS &&
                   gpus[i].nevents < MAX_EVENTS) {
            gpus[i].event_type[gpus[i].nevents] = QUEUED_GPU_LOST;
            gpus[i].event_data[gpus[i].nevents++] = 0;
        } else if (!strcmp(kind, "error") && sscanf(line, "error %95s %95s", a, b) == 2 &&
                   nerrors < 32) {
            snprintf(errors[nerrors][0], 96, "%s", a);
            snprintf(errors[nerrors][1], 96, "%s", b);
            nerrors++;
        }
    }
    fclose(f);
}

/* Reads the scenario; the code the scenario gives `function`, else success. */
static nvmlReturn_t enter(const char *function) {
    load();
    for (int e = 0; e < nerrors; e++)
        if (!strcmp(errors[e][0], function)) return atoi(errors[e][1]);
    return NVML_SUCCESS;
}

/* The GPU (and MIG slot, -1 for the GPU itself) of a handle; NULL when there is none. */
static device_t *device_of(nvmlDevice_t handle, int *gpu_index, int *mig_slot) {
    uintptr_t h = (uintptr_t)handle;
    int g = (int)(h >> 8 ? (h >> 8) - 1 : h - 1);
    int m = h >> 8 ? (int)(h & 0xff) - 1 : -1;
    if (g < 0 || g >= ngpus || !gpus[g].gpu.present) return NULL;
    if (gpu_index) *gpu_index = g;
    if (mig_slot) *mig_slot = m;
    if (m < 0) return &gpus[g].gpu;
    if (m >= gpus[g].nmigs) return NULL;
    return &gpus[g].migs[m];
}

#define ENTER(name)                       \
    nvmlReturn_t rc_ = enter(name);       \
    if (rc_ != NVML_SUCCESS) return rc_;

nvmlReturn_t nvmlInit_v2(void) { ENTER("nvmlInit_v2"); return NVML_SUCCESS; }
nvmlReturn_t nvmlInit(void) { return nvmlInit_v2(); }
nvmlReturn_t nvmlInitWithFlags(unsigned int flags) { (void)flags; return nvmlInit_v2(); }
nvmlReturn_t nvmlShutdown(void) { return NVML_SUCCESS; }

const char *nvmlErrorString(nvmlReturn_t result) {
    (void)result;
    return "fake NVML error";
}

nvmlReturn_t nvmlSystemGetDriverVersion(char *version, unsigned int length) {
    ENTER("nvmlSystemGetDriverVersion");
    snprintf(version, length, "550.54.15");
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetCount_v2(unsigned int *count) {
    ENTER("nvmlDeviceGetCount_v2");
    *count = (unsigned int)ngpus;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetHandleByIndex_v2(unsigned int index, nvmlDevice_t *device) {
    ENTER("nvmlDeviceGetHandleByIndex_v2");
    if (index >= (unsigned int)ngpus || !gpus[index].gpu.present) return NVML_ERROR_INVALID_ARGUMENT;
    *device = (nvmlDevice_t)(uintptr_t)(index + 1);
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetIndex(nvmlDevice_t device, unsigned int *index) {
    ENTER("nvmlDeviceGetIndex");
    int g;
    if (!device_of(device, &g, NULL)) return NVML_ERROR_INVALID_ARGUMENT;
    *index = (unsigned int)g;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetUUID(nvmlDevice_t device, char *uuid, unsigned int length) {
    ENTER("nvmlDeviceGetUUID");
    device_t *d = device_of(device, NULL, NULL);
    if (!d) return NVML_ERROR_INVALID_ARGUMENT;
    if (strlen(d->uuid) + 1 > length) return NVML_ERROR_INSUFFICIENT_SIZE;
    snprintf(uuid, length, "%s", d->uuid);
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetName(nvmlDevice_t device, char *name, unsigned int length) {
    ENTER("nvmlDeviceGetName");
    device_t *d = device_of(device, NULL, NULL);
    if (!d) return NVML_ERROR_INVALID_ARGUMENT;
    snprintf(name, length, "%s", d->name);
    for (char *c = name; *c; c++)
        if (*c == '_') *c = ' ';
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetMemoryInfo_v2(nvmlDevice_t device, memory_v2_t *memory) {
    ENTER("nvmlDeviceGetMemoryInfo_v2");
    device_t *d = device_of(device, NULL, NULL);
    if (!d) return NVML_ERROR_INVALID_ARGUMENT;
    memory->total = d->total;
    memory->free = d->free;
    memory->reserved = 0;
    memory->used = d->total > d->free ? d->total - d->free : 0;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetCudaComputeCapability(nvmlDevice_t device, int *major, int *minor) {
    ENTER("nvmlDeviceGetCudaComputeCapability");
    int g, m;
    if (!device_of(device, &g, &m)) return NVML_ERROR_INVALID_ARGUMENT;
    *major = gpus[g].cc_major;
    *minor = gpus[g].cc_minor;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetComputeRunningProcesses_v3(nvmlDevice_t device, unsigned int *count,
                                                     process_info_t *infos) {
    ENTER("nvmlDeviceGetComputeRunningProcesses_v3");
    device_t *d = device_of(device, NULL, NULL);
    if (!d) return NVML_ERROR_INVALID_ARGUMENT;
    if (*count < (unsigned int)d->nprocs || !infos) {
        *count = (unsigned int)d->nprocs;
        return d->nprocs ? NVML_ERROR_INSUFFICIENT_SIZE : NVML_SUCCESS;
    }
    for (int p = 0; p < d->nprocs; p++) infos[p] = d->procs[p];
    *count = (unsigned int)d->nprocs;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetMigMode(nvmlDevice_t device, unsigned int *current, unsigned int *pending) {
    ENTER("nvmlDeviceGetMigMode");
    int g, m;
    if (!device_of(device, &g, &m) || m >= 0) return NVML_ERROR_INVALID_ARGUMENT;
    *current = *pending = gpus[g].nmigs > 0 ? 1 : 0;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetMaxMigDeviceCount(nvmlDevice_t device, unsigned int *count) {
    ENTER("nvmlDeviceGetMaxMigDeviceCount");
    int g, m;
    if (!device_of(device, &g, &m) || m >= 0) return NVML_ERROR_INVALID_ARGUMENT;
    *count = gpus[g].nmigs > 0 ? MAX_MIGS : 0;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetMigDeviceHandleByIndex(nvmlDevice_t device, unsigned int index,
                                                 nvmlDevice_t *mig) {
    ENTER("nvmlDeviceGetMigDeviceHandleByIndex");
    int g, m;
    if (!device_of(device, &g, &m) || m >= 0) return NVML_ERROR_INVALID_ARGUMENT;
    if (index >= (unsigned int)gpus[g].nmigs) return NVML_ERROR_NOT_FOUND;
    *mig = (nvmlDevice_t)(uintptr_t)(((uintptr_t)g + 1) << 8 | (index + 1));
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetSupportedEventTypes(nvmlDevice_t device, unsigned long long *types) {
    ENTER("nvmlDeviceGetSupportedEventTypes");
    if (!device_of(device, NULL, NULL)) return NVML_ERROR_INVALID_ARGUMENT;
    *types = EVENT_XID_CRITICAL | EVENT_DOUBLE_BIT_ECC;
    return NVML_SUCCESS;
}

/* An event set is the GPU it was registered for (one set per GPU, as the daemon makes them):
 * created empty (0), then (index + 1) once registered. */
nvmlReturn_t nvmlEventSetCreate(nvmlEventSet_t *set) {
    ENTER("nvmlEventSetCreate");
    *set = (nvmlEventSet_t)malloc(sizeof(uintptr_t));
    if (!*set) return NVML_ERROR_NOT_SUPPORTED;
    *(uintptr_t *)*set = 0;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceRegisterEvents(nvmlDevice_t device, unsigned long long types,
                                      nvmlEventSet_t set) {
    ENTER("nvmlDeviceRegisterEvents");
    int g, m;
    (void)types;
    if (!set || !device_of(device, &g, &m) || m >= 0) return NVML_ERROR_INVALID_ARGUMENT;
    *(uintptr_t *)set = (uintptr_t)g + 1;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlEventSetWait_v2(nvmlEventSet_t set, event_data_t *data, unsigned int timeout_ms) {
    ENTER("nvmlEventSetWait_v2");
    (void)timeout_ms;
    uintptr_t g1 = set ? *(uintptr_t *)set : 0;
    if (!g1 || (int)g1 > ngpus) return NVML_ERROR_TIMEOUT;
    int g = (int)g1 - 1;
    /* A list cut short: what is appended next is delivered (as the JSON fixture does). */
    if (delivered[g] > gpus[g].nevents) delivered[g] = gpus[g].nevents;
    if (delivered[g] >= gpus[g].nevents) return NVML_ERROR_TIMEOUT;
    int e = delivered[g]++;
    if (gpus[g].event_type[e] == QUEUED_GPU_LOST) return NVML_ERROR_GPU_IS_LOST;
    memset(data, 0, sizeof *data);
    data->device = (nvmlDevice_t)g1;
    data->type = gpus[g].event_type[e];
    data->data = gpus[g].event_data[e];
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlEventSetFree(nvmlEventSet_t set) {
    free(set);
    return NVML_SUCCESS;
}
