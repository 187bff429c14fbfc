"""Personal safety: the 20 sensitivity traits and the age constraints, the phrasings that put a
constraint into the user's words (the injector), and the Safety Oracle that judges an item for a
trait with its evidence."""
