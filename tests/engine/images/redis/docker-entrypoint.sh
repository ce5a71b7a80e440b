#!/bin/sh
# Mirrors the official image's entrypoint (docker-library/redis, 7.2/alpine/docker-entrypoint.sh,
# commit e92049967d6baa9b4b3d6fd950553e6458e61f13): a first argument that is a flag or a *.conf file
# means `redis-server <args>`; as root it chowns /data and re-execs as redis (gosu there, setpriv here);
# the default umask 0022 becomes 0077; then it execs the command.
set -e

if [ "${1#-}" != "$1" ] || [ "${1%.conf}" != "$1" ]; then
	set -- redis-server "$@"
fi

if [ "$1" = 'redis-server' ] && [ "$(id -u)" = '0' ]; then
	find . \! -user redis -exec chown redis '{}' +
	exec setpriv --reuid=redis --regid=redis --init-groups "$0" "$@"
fi

um="$(umask)"
if [ "$um" = '0022' ]; then
	umask 0077
fi

exec "$@"
