# drover %postun ($1: 0 after removal, 1 or more after upgrade).
if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || :
    if [ "$1" -ge 1 ]; then
        # Upgrade: restart whichever unit runs on the new binary; a stopped one stays
        # stopped. Neither takes the host out: the machine stays up.
        systemctl try-restart drover.service drover-oneshot.service >/dev/null 2>&1 || :
    fi
fi
