/*
 * drm-flip: the guest half of scripts/bench-display. Draws full-screen
 * frames as fast as the display device takes them, through two DRM dumb
 * buffers and page flips, so that every frame makes the virtio-gpu driver
 * transfer and flush the whole screen to the VMM.
 *
 *   drm-flip SECONDS [flip|dirty]
 *
 * It opens /dev/dri/card0, takes the first connected connector and its
 * preferred mode, creates two dumb buffers, sets the mode and then, for
 * SECONDS, draws the next frame into the buffer not shown and flips to it
 * (waiting for the flip's completion event before drawing the next one).
 * "dirty" draws into one buffer and reports the whole of it damaged
 * (DIRTYFB) instead: the path of a desktop without page flips. Every
 * frame is a gradient moving in x, y and colour, so every pixel changes
 * from one frame to the next and no server can skip a part of the screen.
 *
 * Lines on stdout (the guest's console; scripts/bench-display reads them):
 *   BENCH-DISPLAY: flipping WxH mode=flip|dirty
 *   BENCH-DISPLAY: frames=N ms=T fps=F
 * Errors go to stderr with the failing step; the exit status is then 1.
 *
 * Raw ioctls on the kernel's UAPI structures (libdrm's headers, no libdrm
 * library), built static on the host so the busybox guest needs nothing.
 */
#include <drm.h>
#include <drm_mode.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define CARD "/dev/dri/card0"
#define MAX_ITEMS 64

struct buffer {
    uint32_t handle;
    uint32_t pitch;
    uint64_t size;
    uint32_t fb_id;
    uint32_t *pixels;
};

static void fail(const char *step)
{
    fprintf(stderr, "drm-flip: %s: %s\n", step, strerror(errno));
    exit(1);
}

/* The ioctl, restarted when a signal interrupts it. */
static int drm_ioctl(int fd, unsigned long request, void *arg)
{
    int ret;
    do {
        ret = ioctl(fd, request, arg);
    } while (ret == -1 && (errno == EINTR || errno == EAGAIN));
    return ret;
}

static uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* The kernel registers the card asynchronously after the module loads. */
static int open_card(void)
{
    for (int tries = 0; tries < 100; tries++) {
        int fd = open(CARD, O_RDWR | O_CLOEXEC);
        if (fd >= 0)
            return fd;
        usleep(100000);
    }
    fail("open " CARD);
    return -1;
}

struct output {
    uint32_t connector_id;
    uint32_t crtc_id;
    struct drm_mode_modeinfo mode;
};

/* The first connected connector, its preferred mode (else its first) and a
 * CRTC that can drive it. */
static struct output find_output(int fd)
{
    uint32_t connectors[MAX_ITEMS], crtcs[MAX_ITEMS], encoders[MAX_ITEMS];
    struct drm_mode_card_res res;
    struct output out = {0};

    memset(&res, 0, sizeof(res));
    if (drm_ioctl(fd, DRM_IOCTL_MODE_GETRESOURCES, &res) == -1)
        fail("GETRESOURCES");
    if (res.count_connectors > MAX_ITEMS || res.count_crtcs > MAX_ITEMS || res.count_encoders > MAX_ITEMS) {
        fprintf(stderr, "drm-flip: more than %d connectors/crtcs/encoders\n", MAX_ITEMS);
        exit(1);
    }
    res.count_fbs = 0;
    res.connector_id_ptr = (uintptr_t)connectors;
    res.crtc_id_ptr = (uintptr_t)crtcs;
    res.encoder_id_ptr = (uintptr_t)encoders;
    if (drm_ioctl(fd, DRM_IOCTL_MODE_GETRESOURCES, &res) == -1)
        fail("GETRESOURCES (ids)");

    for (uint32_t c = 0; c < res.count_connectors; c++) {
        struct drm_mode_get_connector conn;
        struct drm_mode_modeinfo modes[MAX_ITEMS];
        uint32_t conn_encoders[MAX_ITEMS];

        /* The first call with no modes asked for makes the kernel probe. */
        memset(&conn, 0, sizeof(conn));
        conn.connector_id = connectors[c];
        if (drm_ioctl(fd, DRM_IOCTL_MODE_GETCONNECTOR, &conn) == -1)
            fail("GETCONNECTOR");
        if (conn.connection != 1 || conn.count_modes == 0)
            continue;
        if (conn.count_modes > MAX_ITEMS)
            conn.count_modes = MAX_ITEMS;
        if (conn.count_encoders > MAX_ITEMS)
            conn.count_encoders = MAX_ITEMS;
        conn.count_props = 0;
        conn.modes_ptr = (uintptr_t)modes;
        conn.encoders_ptr = (uintptr_t)conn_encoders;
        if (drm_ioctl(fd, DRM_IOCTL_MODE_GETCONNECTOR, &conn) == -1)
            fail("GETCONNECTOR (modes)");
        if (conn.count_modes == 0)
            continue;

        out.connector_id = conn.connector_id;
        out.mode = modes[0];
        for (uint32_t m = 0; m < conn.count_modes && m < MAX_ITEMS; m++) {
            if (modes[m].type & DRM_MODE_TYPE_PREFERRED) {
                out.mode = modes[m];
                break;
            }
        }

        /* The CRTC the encoder drives now, else the first it can drive. */
        for (uint32_t e = 0; e < conn.count_encoders && e < MAX_ITEMS; e++) {
            struct drm_mode_get_encoder enc;
            memset(&enc, 0, sizeof(enc));
            enc.encoder_id = (e == 0 && conn.encoder_id) ? conn.encoder_id : conn_encoders[e];
            if (drm_ioctl(fd, DRM_IOCTL_MODE_GETENCODER, &enc) == -1)
                fail("GETENCODER");
            if (enc.crtc_id) {
                out.crtc_id = enc.crtc_id;
                return out;
            }
            for (uint32_t k = 0; k < res.count_crtcs; k++) {
                if (enc.possible_crtcs & (1u << k)) {
                    out.crtc_id = crtcs[k];
                    return out;
                }
            }
        }
    }
    fprintf(stderr, "drm-flip: no connected connector with a mode and a CRTC\n");
    exit(1);
}

static void create_buffer(int fd, const struct drm_mode_modeinfo *mode, struct buffer *buf)
{
    struct drm_mode_create_dumb create;
    struct drm_mode_fb_cmd fb;
    struct drm_mode_map_dumb map;

    memset(&create, 0, sizeof(create));
    create.width = mode->hdisplay;
    create.height = mode->vdisplay;
    create.bpp = 32;
    if (drm_ioctl(fd, DRM_IOCTL_MODE_CREATE_DUMB, &create) == -1)
        fail("CREATE_DUMB");
    buf->handle = create.handle;
    buf->pitch = create.pitch;
    buf->size = create.size;

    memset(&fb, 0, sizeof(fb));
    fb.width = mode->hdisplay;
    fb.height = mode->vdisplay;
    fb.pitch = create.pitch;
    fb.bpp = 32;
    fb.depth = 24;
    fb.handle = create.handle;
    if (drm_ioctl(fd, DRM_IOCTL_MODE_ADDFB, &fb) == -1)
        fail("ADDFB");
    buf->fb_id = fb.fb_id;

    memset(&map, 0, sizeof(map));
    map.handle = create.handle;
    if (drm_ioctl(fd, DRM_IOCTL_MODE_MAP_DUMB, &map) == -1)
        fail("MAP_DUMB");
    buf->pixels = mmap(NULL, create.size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, (off_t)map.offset);
    if (buf->pixels == MAP_FAILED)
        fail("mmap of the dumb buffer");
}

/* Frame N: x and y gradients that move by a few pixels a frame, over a blue
 * level that steps every frame, so no pixel keeps its value. */
static void draw(const struct buffer *buf, uint32_t width, uint32_t height, uint32_t frame)
{
    uint32_t blue = (frame * 37u + 1u) & 0xff;
    for (uint32_t y = 0; y < height; y++) {
        uint32_t *row = buf->pixels + (size_t)y * (buf->pitch / 4);
        uint32_t green = ((y + frame * 3u) & 0xff) << 8;
        for (uint32_t x = 0; x < width; x++)
            row[x] = 0xff000000u | (((x + frame * 5u) & 0xff) << 16) | green | blue;
    }
}

static void set_crtc(int fd, const struct output *out, const struct buffer *buf)
{
    struct drm_mode_crtc crtc;
    uint32_t connector = out->connector_id;

    memset(&crtc, 0, sizeof(crtc));
    crtc.crtc_id = out->crtc_id;
    crtc.fb_id = buf->fb_id;
    crtc.set_connectors_ptr = (uintptr_t)&connector;
    crtc.count_connectors = 1;
    crtc.mode = out->mode;
    crtc.mode_valid = 1;
    if (drm_ioctl(fd, DRM_IOCTL_MODE_SETCRTC, &crtc) == -1)
        fail("SETCRTC");
}

/* Flip to BUF and wait for the kernel's completion event: the next frame is
 * drawn into the other buffer only once this one is on the screen. */
static void flip(int fd, const struct output *out, const struct buffer *buf)
{
    struct drm_mode_crtc_page_flip page_flip;
    char events[1024];

    memset(&page_flip, 0, sizeof(page_flip));
    page_flip.crtc_id = out->crtc_id;
    page_flip.fb_id = buf->fb_id;
    page_flip.flags = DRM_MODE_PAGE_FLIP_EVENT;
    if (drm_ioctl(fd, DRM_IOCTL_MODE_PAGE_FLIP, &page_flip) == -1)
        fail("PAGE_FLIP");
    for (;;) {
        struct pollfd pfd = {.fd = fd, .events = POLLIN};
        int ready = poll(&pfd, 1, 5000);
        if (ready == -1 && errno == EINTR)
            continue;
        if (ready == -1)
            fail("poll for the flip event");
        if (ready == 0) {
            fprintf(stderr, "drm-flip: no flip completion event within 5 s\n");
            exit(1);
        }
        ssize_t len = read(fd, events, sizeof(events));
        if (len == -1 && errno == EINTR)
            continue;
        if (len == -1)
            fail("read of the flip event");
        for (ssize_t off = 0; off + (ssize_t)sizeof(struct drm_event) <= len;) {
            const struct drm_event *ev = (const struct drm_event *)(events + off);
            if (ev->type == DRM_EVENT_FLIP_COMPLETE)
                return;
            if (ev->length == 0)
                break;
            off += ev->length;
        }
    }
}

static void mark_dirty(int fd, const struct buffer *buf)
{
    struct drm_mode_fb_dirty_cmd dirty;

    /* No clip rectangles: the whole framebuffer is damaged. */
    memset(&dirty, 0, sizeof(dirty));
    dirty.fb_id = buf->fb_id;
    if (drm_ioctl(fd, DRM_IOCTL_MODE_DIRTYFB, &dirty) == -1)
        fail("DIRTYFB");
}

int main(int argc, char **argv)
{
    char *end;
    if (argc < 2 || argc > 3)
        goto usage;
    long seconds = strtol(argv[1], &end, 10);
    if (*end != '\0' || seconds <= 0 || seconds > 3600)
        goto usage;
    int use_flip = 1;
    if (argc == 3) {
        if (strcmp(argv[2], "dirty") == 0)
            use_flip = 0;
        else if (strcmp(argv[2], "flip") != 0)
            goto usage;
    }

    int fd = open_card();
    struct output out = find_output(fd);
    uint32_t width = out.mode.hdisplay, height = out.mode.vdisplay;
    struct buffer bufs[2];
    create_buffer(fd, &out.mode, &bufs[0]);
    create_buffer(fd, &out.mode, &bufs[1]);

    draw(&bufs[0], width, height, 0);
    set_crtc(fd, &out, &bufs[0]);
    printf("BENCH-DISPLAY: flipping %ux%u mode=%s\n", width, height, use_flip ? "flip" : "dirty");
    fflush(stdout);

    uint64_t start = now_ms(), deadline = start + (uint64_t)seconds * 1000, now;
    uint32_t frames = 0;
    do {
        uint32_t frame = frames + 1;
        const struct buffer *target = use_flip ? &bufs[frame % 2] : &bufs[0];
        draw(target, width, height, frame);
        if (use_flip)
            flip(fd, &out, target);
        else
            mark_dirty(fd, target);
        frames = frame;
        now = now_ms();
    } while (now < deadline);

    uint64_t elapsed = now - start;
    printf("BENCH-DISPLAY: frames=%u ms=%llu fps=%.2f\n", frames, (unsigned long long)elapsed,
           elapsed ? frames * 1000.0 / (double)elapsed : 0.0);
    fflush(stdout);
    return 0;

usage:
    fprintf(stderr, "usage: drm-flip SECONDS [flip|dirty]\n");
    return 2;
}
