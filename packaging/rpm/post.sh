# drover %post ($1: 1 on install, 2 or more on upgrade).
# /etc/drover holds the config and the secret files cloud-init fetches: owner only.
chmod 0700 /etc/drover 2>/dev/null || :
if [ "$1" -eq 1 ] && command -v systemctl >/dev/null 2>&1; then
    # Enabled, never started here: an image bake must not register the bake VM.
    systemctl --no-reload enable drover.service >/dev/null 2>&1 || :
fi
