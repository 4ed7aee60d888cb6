DROP TABLE todos;
DROP TABLE users;
