package main

import (
	"os/user"
	"strconv"
	"strings"
)

// lookupRunAs resolves UID[:GID] or LOGIN[:GROUP]. Without a group, a
// known user's primary group is taken, else the GID equal to the UID.
func lookupRunAs(spec string) (uid, gid int, err error) {
	us, gs, hasGroup := strings.Cut(spec, ":")
	primary := ""
	if n, err := strconv.ParseUint(us, 10, 32); err == nil {
		uid = int(n)
		if u, err := user.LookupId(us); err == nil {
			primary = u.Gid
		} else {
			primary = us
		}
	} else {
		u, err := user.Lookup(us)
		if err != nil {
			return 0, 0, err
		}
		if uid, err = strconv.Atoi(u.Uid); err != nil {
			return 0, 0, err
		}
		primary = u.Gid
	}
	if !hasGroup {
		gs = primary
	}
	if n, err := strconv.ParseUint(gs, 10, 32); err == nil {
		return uid, int(n), nil
	}
	g, err := user.LookupGroup(gs)
	if err != nil {
		return 0, 0, err
	}
	gid, err = strconv.Atoi(g.Gid)
	return uid, gid, err
}
