# State lives in /var/lib/orchard (the unit's StateDirectory). Create it when missing; an
# existing one (an upgrade or a reinstall) is never touched.
if [ ! -d /var/lib/orchard ]; then
    install -d -m 0700 -o orchard -g orchard /var/lib/orchard
fi
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || :
    if [ "$1" -eq 1 ]; then
        systemctl preset orchard.service >/dev/null 2>&1 || :
    fi
fi
exit 0
