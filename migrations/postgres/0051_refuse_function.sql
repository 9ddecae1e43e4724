-- A lone command is written by one statement outside any transaction (src/store/append/lone.rs).
-- The statement checks, once its head update and task row are in, that the ledger is as the
-- command was sealed for; if not, it calls this, and the error undoes everything it wrote.
-- SQL alone cannot raise an error on a condition; a function can, and being VOLATILE it is
-- never evaluated ahead of the check that calls it.
CREATE FUNCTION taskledger_refuse(reason TEXT) RETURNS BOOLEAN
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    RAISE EXCEPTION 'the ledger moved: %', reason USING ERRCODE = 'TLR01';
END
$$;
