package swarm

import g "github.com/anacrolix/generics"

type optBool = g.Option[bool]
