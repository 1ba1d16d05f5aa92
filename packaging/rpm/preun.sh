# drover %preun ($1: 0 on removal, 1 or more on upgrade).
if [ "$1" -eq 0 ] && command -v systemctl >/dev/null 2>&1; then
    # Stopping is safe: on a machine that stays up, drover leaves the host registered
    # (lifecycle.on_sigterm = "auto").
    systemctl --no-reload disable --now drover.service drover-oneshot.service >/dev/null 2>&1 || :
fi
