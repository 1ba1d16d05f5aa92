# drover %postun ($1: 0 after removal, 1 or more after upgrade).
if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || :
    if [ "$1" -ge 1 ]; then
        # Upgrade: restart a running drover on the new binary; a stopped one stays stopped.
        systemctl try-restart drover.service >/dev/null 2>&1 || :
    fi
fi
