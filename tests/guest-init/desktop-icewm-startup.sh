#!/bin/sh
# What: /etc/X11/icewm/startup in the Debian desktop guest image
# (scripts/guest-assets target debian-desktop; its hash is part of that
# target's cache key). Who runs it: icewm-session, as the logged-in user, when
# the IceWM session starts. Why: IceWM does not run the XDG autostart entries
# (/etc/xdg/autostart/spice-vdagent.desktop), and the clipboard needs
# spice-vdagent's session agent in the user's X session. It daemonizes, and
# exits on its own when the guest has no com.redhat.spice.0 port. Full
# desktops (Xfce) run the XDG entry instead and never read this file.
spice-vdagent
