# The state in /var/lib/orchard is kept on erase (rpm has no purge): delete it by hand.
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || :
    # On upgrade: restart a running daemon on the new binary.
    if [ "$1" -ge 1 ]; then
        systemctl try-restart orchard.service >/dev/null 2>&1 || :
    fi
fi
exit 0
